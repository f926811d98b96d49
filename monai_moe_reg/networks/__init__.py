"""Registration networks and their building blocks."""
