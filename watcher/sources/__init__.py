"""Where log bytes come from when specwatch runs as a service: followed files and journald."""
