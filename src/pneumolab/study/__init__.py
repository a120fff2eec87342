"""Studies: train a lineup of models from one YAML file, compare them and select the best."""
