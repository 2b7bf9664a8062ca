"""The Ray layer: starts or joins Ray and runs vsae's pure functions on it. Only here imports ray."""
