"""Parts of the search report (dcell_core/search/report.py): statistics, plotly figures and the HTML page."""
