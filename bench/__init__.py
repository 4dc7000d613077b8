"""confguard's benchmark (`make bench`): performance figures, not tests. See bench/README.md."""
