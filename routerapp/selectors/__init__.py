"""Every read and aggregate the API, the UI and the dashboards need."""
