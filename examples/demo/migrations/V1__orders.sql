-- The schema 1.0.0 runs on.
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    item text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
