"""The discrete-event simulator: virtual clock, same controller, same policies."""
