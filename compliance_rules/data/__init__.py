"""Reference data the packs build on (the IPCC GWP tables); read by ``loader`` only."""
