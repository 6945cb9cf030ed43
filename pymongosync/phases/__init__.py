"""The phases of a migration, one module each, and the runner that composes them."""
