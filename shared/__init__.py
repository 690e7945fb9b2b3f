"""The chat core shared by every stage: settings, protocol, channels, broker, presence, app."""
