"""mongoemu: a MongoDB wire-protocol emulator (replica-set primary or mongos) for tests."""
