"""API keys, roles and the guards that check them."""
