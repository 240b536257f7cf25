"""Test plugins: an example mpo plugin package and the fixtures that install it."""
