"""Why stars: views that explain what the star operation buys."""
