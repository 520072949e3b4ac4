package main

// plural picks the word for n things: "1 warning", "2 warnings".
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
