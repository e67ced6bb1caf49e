"""Archives: classifying, reading members, checking them, and building trees."""
