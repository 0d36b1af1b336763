"""What the tests share: real peers and processes, builders of events and configurations."""
