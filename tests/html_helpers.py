"""An HTML parser shared by the report tests (a plain module, like spec_helpers)."""

from __future__ import annotations

from html.parser import HTMLParser


class Collect(HTMLParser):
    """Tags with attributes, text, and a check that every element is closed in order."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
