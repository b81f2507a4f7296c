"""Stand-ins for what the tests cannot have here (a GPU and its driver)."""
