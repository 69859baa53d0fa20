"""One trial: train and evaluate one frozen or fine-tuned detector. No Ray, no MLflow here."""
