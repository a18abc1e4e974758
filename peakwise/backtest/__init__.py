"""`peakwise backtest`: replay a demand trace through Peakwise and the usual alternatives."""
