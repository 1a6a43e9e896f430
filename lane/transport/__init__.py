"""The MQTT transport: one broker connection (MqttLink); imports lane.wire only."""
