-- 2.0.0 adds an optional note to orders: additive (a nullable column), so 1.0.0 keeps working
-- on the new schema and the blue-green switch needs no downtime.
ALTER TABLE orders ADD COLUMN note text;
