"""Forecasting's pieces below the task: series cut into windows (windows), a forecaster run on histories and its
inputs checked (inference), and backtests and forecasts as tables, prints and plots (presentation). The task
(tasks/forecast.py) composes them; runs.LoadedRun.forecast and the server call the inference API."""
