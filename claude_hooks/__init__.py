"""claude-hooks: mention an agent on Forgejo, get real work back."""

__version__ = "0.1.0"
