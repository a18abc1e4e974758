"""What Peakwise prints and draws for people: tables and plots of scores and replays."""
