"""`make bench`: benchmark sections run in order into one readable report (see `__main__`)."""
