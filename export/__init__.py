"""export stage (see its issue); nothing is built here yet."""
