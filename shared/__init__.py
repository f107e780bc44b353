"""The common library of the Lotgate services: config, logging, database, messaging, gRPC."""
