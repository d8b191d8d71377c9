package main

import "github.com/systemimager/sim/sync/units"

// fmtBytes is the one byte formatter, under the name the lab tests use.
var fmtBytes = units.Bytes
