"""Federated LDMLR: long-tailed clients, FedDDPM / FedDDPM+ and a progressive auxiliary bank, on Flower."""
