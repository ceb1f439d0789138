"""Training code for the shipped artifacts (torch fine-tuning, data building). Serving never
imports this package: the gateway loads only the artifacts it writes into routing/artifacts."""
