"""Demand forecasting: scikit-learn style estimators and the Prometheus history adapter."""
