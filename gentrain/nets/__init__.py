"""Network building blocks shared by the model families; they know nothing about losses."""
