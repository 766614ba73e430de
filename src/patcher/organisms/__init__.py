"""Backdoored model organisms: attacks, the tiny base, and the poisoned alignment fine-tune."""
