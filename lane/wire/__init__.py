"""The neutral leaf: msgpack codec, ids, MQTT topic vocabulary (msgpack + stdlib only)."""
