"""The operator console: a plaza as its lanes publish it over MQTT (docs/console.md)."""
