"""Target connectors: each opens a terminal (or command) on one kind of target behind one interface."""
