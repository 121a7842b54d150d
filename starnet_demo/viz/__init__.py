"""Pictures: supervision annotations and star-operation heatmaps."""
