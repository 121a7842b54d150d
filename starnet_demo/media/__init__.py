"""Reading user images and videos safely."""
