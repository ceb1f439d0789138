"""The composition root: builds the application from its layers (gateway, and the web UI
mounted on it) and runs it from the command line. Nothing below imports this package."""
