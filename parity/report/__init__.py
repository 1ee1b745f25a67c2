"""ReportData and its renderers. Renderers read ReportData only; they never recompute."""
