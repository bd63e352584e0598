"""MultiMeditron."""
