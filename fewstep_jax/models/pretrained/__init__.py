"""Importing the official pretrained models (NVlabs EDM / EDM2 network pickles) into the suite's networks."""
