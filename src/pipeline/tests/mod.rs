//! Unit tests of the pipeline over the fake backend and the fake procfs.
