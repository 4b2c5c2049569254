// Package nftlist reads an nftables table back as the nftables library
// sees it, for tests that check what the capture rules installed: the
// capture package's own tests and the end-to-end test of unstuck capture.
// Only tests import it.
package nftlist

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Listing is what the kernel holds of a table: the chain, its rules'
// expressions, the sets and their elements.
type Listing struct {
	Chain string
	Rules []string
	Sets  map[string][]string // by "name keytype", elements in hex, sorted
}

// List reads table (family inet) and its chain; false means there is no
// such table. Any other failure fails the test.
func List(t testing.TB, table, chain string) (Listing, bool) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tab, err := c.ListTableOfFamily(table, nftables.TableFamilyINet)
	if errors.Is(err, unix.ENOENT) {
		return Listing{}, false
	} else if err != nil {
		t.Fatalf("listing table %s: %v", table, err)
	}
	ch, err := c.ListChain(tab, chain)
	if err != nil {
		t.Fatalf("listing chain %s: %v", chain, err)
	}
	l := Listing{Chain: fmt.Sprintf("%s type %s hook %d priority %d policy %d", ch.Name, ch.Type, *ch.Hooknum, *ch.Priority, *ch.Policy), Sets: map[string][]string{}}
	rules, err := c.GetRules(tab, ch)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		var parts []string
		for _, e := range r.Exprs {
			parts = append(parts, fmt.Sprintf("%T%+v", e, e))
		}
		l.Rules = append(l.Rules, strings.Join(parts, " "))
	}
	sets, err := c.GetSets(tab)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, e := range elems {
			keys = append(keys, fmt.Sprintf("%x", e.Key))
		}
		slices.Sort(keys) // a set's elements are listed in hash order
		l.Sets[s.Name+" "+s.KeyType.Name] = keys
	}
	return l, true
}
