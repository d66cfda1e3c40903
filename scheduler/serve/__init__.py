"""attnsched as an online service: clients submit jobs over HTTP to a live run loop."""
