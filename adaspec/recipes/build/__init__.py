"""`adaspec build`: a user's own target and data in, the drafter that serves it best out."""
