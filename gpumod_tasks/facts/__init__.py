"""Facts: a command (or file read, or HTTP GET) plus a pure parser of its output."""
