"""EdgeKit packaging: bundle, .deb, wheel and image builders, and the devices they are flashed to."""
