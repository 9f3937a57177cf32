"""What the gateway tells its operators: metrics (`metrics.py`, served at /metrics) and log lines (`logs.py`)."""
