"""AWS edge: clients, error mapping, entry-level batch calls, bootstrap, queue monitor."""
